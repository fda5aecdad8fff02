"""The `scnas` command."""


def main(argv=None) -> int:
    raise SystemExit("scnas: the command line is being built")
