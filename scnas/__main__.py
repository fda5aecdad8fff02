from scnas.cli import main

raise SystemExit(main())
