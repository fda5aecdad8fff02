"""Predicted peak memory of one training or search step, simulated on tensors that hold no data.

The step runs as the training and search loops run it: forward, the Jaccard loss, zero_grad, backward
and an Adam step; a search step is a weight half-step and then an alpha half-step, each on its own batch
and its own draw of the architecture. It runs on tensors that carry shapes and dtypes only (meta tensors
inside a wrapper that reports a device): for CUDA they report the meta device, so that the code paths
taken off the CPU run (torch's pooling and interpolation, unfused separable convolutions); for the CPU
they report the CPU, so that its paths run (per-axis pooling, fused separable convolutions). A tracker
follows every tensor storage from its allocation to its release (parameters, batches, what autograd
saves, recomputed regions, gradients, the backward pass's temporaries), so the simulated peak is exact
for what PyTorch allocates as tensors; Adam's state is counted rather than run. AMP (CUDA only) runs the
network and the batches in half precision, which gives every activation the dtype autocast gives it in
these networks (their convolutions run in half precision and every other operation follows its inputs'
dtype; the loss casts to float32 itself), so each saved tensor counts at its own dtype's size; what
autocast keeps in float32 (parameters, gradients, Adam's moments, the images) and the half copies it
makes of weights and images are then added by count.

What no tensor holds is added on top of the step's simulated memory (its peak minus what exists before
it: parameters and batches): on the CPU the kernels' scratch buffers and code pages, CPU_OVERHEAD, fitted
to the peak RSS of fresh processes whose allocator returns freed memory (MALLOC_MMAP_THRESHOLD_=131072,
benchmarks/memory.py); glibc's default allocator also keeps freed heap memory of tensors under its
dynamic mmap threshold (up to 32 MiB), fragmented, which this does not model. On CUDA an allowance for
the caching allocator's rounding and cuDNN workspaces, CUDA_OVERHEAD, not yet measured on a GPU. The
CUDA context is not included (torch.cuda.max_memory_allocated does not count it either).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from scnas.config import TaskSettings, dataclass_to_dict
from scnas.models.factory import build_model
from scnas.train.loss import jaccard_loss

if TYPE_CHECKING:
    from scnas.nas.genotype import Genotype

GIB = 2**30
PRECISIONS = ("float32", "amp")
DEVICES = ("cpu", "cuda")
CPU_OVERHEAD = (0.10, 0)
"""(fraction of the step's simulated memory, bytes) added on the CPU: fitted by benchmarks/memory.py."""
CUDA_OVERHEAD = (0.10, 0)
"""The same on CUDA: an allowance, not a fit (no GPU measurement yet)."""
AMP_DTYPE = torch.float16
"""Half precision under AMP: bfloat16 and float16 take the same two bytes."""
WORST = "worst"
WORST_OPERATIONS = ("sep_dil_conv3_r2", "sep_dil_conv3_r3")
"""A search step's costliest draw: every edge runs two separable convolutions (with recomputation they keep
two convolution outputs where they are not fused, more than any other operation keeps)."""

_META = torch.device("meta")
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class StepMemory:
    """Predicted memory of one step on one device, in bytes.

    `resident` exists before the step (parameters, the batches; on steps after the first also the
    gradients and Adam's moments); `peak` is the most the step holds at once, overhead included;
    `step` = peak - resident is what the step adds (the CPU benchmarks measure that: peak RSS minus RSS
    before the first step).
    """

    peak: int
    resident: int
    simulated_peak: int
    overhead: int

    @property
    def step(self) -> int:
        return self.peak - self.resident

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    @property
    def step_gib(self) -> float:
        return self.step / GIB


def training_step_memory(
    spec: dict[str, Any],
    patch: Sequence[int],
    batch: int,
    precision: str = "float32",
    device: str = "cpu",
    warm: bool = True,
) -> StepMemory:
    """One training step of the network `spec` describes (scnas.models.factory: U-ResNet or genotype
    network) on `batch` patches; `warm`: a step after the first, with last step's gradients and Adam's
    moments already allocated (the first step of a process has neither)."""
    dev, amp = _check(patch, batch, precision, device)
    net = _build(lambda: build_model(spec), dev, amp)
    return _simulate(
        net, [(_batch(spec["in_channels"], patch, batch, dev, amp), list(net.parameters()), net, None)], dev, amp, warm
    )


def search_step_memory(
    patch: Sequence[int],
    stem: int,
    batch: int,
    in_channels: int,
    num_classes: int,
    sampling: str = "two",
    precision: str = "float32",
    device: str = "cpu",
    draw: int | Literal["worst"] = WORST,
    tau: float = 1.0,
    recompute: bool = True,
    warm: bool = True,
) -> StepMemory:
    """One search step (weight half-step, then alpha half-step) of the stem-`stem` search network.

    `draw`: WORST, every edge running its costliest operations (WORST_OPERATIONS for "two", the first of
    them for "one"; "all" runs all of them anyway), the figure to plan with; or a seed s, the draws of a
    network built after torch.manual_seed(s) with seed=s, as benchmarks.search_step builds it.
    """
    from scnas.nas import CELL_TYPES, OPERATIONS, SearchNetwork
    from scnas.nas.sampling import SAMPLINGS, EdgeSample, sample_edges

    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {', '.join(SAMPLINGS)}")
    dev, amp = _check(patch, batch, precision, device)

    def build() -> SearchNetwork:
        return SearchNetwork(in_channels, num_classes, stem, sampling=sampling, seed=0, tau=tau, recompute=recompute)

    net = _build(build, dev, amp)
    edges = net.alphas[CELL_TYPES[0]].shape
    if draw == WORST:
        if sampling == "all":
            chosen = tuple(range(len(OPERATIONS)))
        else:
            chosen = tuple(OPERATIONS.index(op) for op in WORST_OPERATIONS[: 1 if sampling == "one" else 2])
        weights = torch.zeros(edges)
        weights[:, list(chosen)] = 1.0 / len(chosen)
        fixed = EdgeSample(weights=weights, active=(chosen,) * edges[0])
        draws = [{t: fixed for t in CELL_TYPES}] * 2
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(draw))
            real = SearchNetwork(in_channels, num_classes, stem, sampling=sampling, seed=int(draw), tau=tau)
        draws = [
            {t: sample_edges(sampling, real.alphas[t].detach(), tau, real.generator) for t in CELL_TYPES}
            for _ in range(2)
        ]
    halves = []
    for draw_, params in zip(draws, (net.weight_parameters(), net.arch_parameters())):
        forward = _SampledCells(net, draw_, dev)
        halves.append((_batch(in_channels, patch, batch, dev, amp), params, forward, forward.used(params)))
    return _simulate(net, halves, dev, amp, warm)


def paper_settings_memory(genotype: Genotype | None = None) -> list[dict[str, Any]]:
    """Predicted GPU memory (CUDA, AMP) of the paper's jobs at 4 x 128^3 with 4 classes, for the README's
    cost table: U-ResNet (32 channels) training at batch 2, the network derived from `genotype` (default
    the random control's seed 0, draw 0) at the stem whose FLOPs match the U-ResNet's, training at batch 2,
    and the stem-48 two-op search step at batch 1 (worst draw, and seed 0's draws)."""
    from scnas.models.flops import count_gflops, match_width
    from scnas.nas.genotype import genotype_to_dict, random_genotype

    channels, classes, patch = 4, 4, (128, 128, 128)
    genotype = random_genotype(0, 0) if genotype is None else genotype
    uresnet = {"arch": "uresnet", "in_channels": channels, "num_classes": classes, "base_channels": 32}
    derived = {
        "arch": "genotype",
        "in_channels": channels,
        "num_classes": classes,
        "genotype": genotype_to_dict(genotype),
    }
    shape = (channels, *patch)
    stem, _ = match_width(
        lambda c: build_model({**derived, "stem_channels": c}),
        count_gflops(build_model(uresnet), shape),
        shape,
        4,
        256,
        4,
    )
    derived["stem_channels"] = stem
    rows = [
        ("U-ResNet, 32 channels, training, batch 2", training_step_memory(uresnet, patch, 2, "amp", "cuda")),
        (
            f"derived network (stem {stem}, FLOPs-matched), training, batch 2",
            training_step_memory(derived, patch, 2, "amp", "cuda"),
        ),
    ]
    for draw in (WORST, 0):
        what = "worst draw" if draw == WORST else "seed 0's draws"
        rows.append(
            (
                f"search step, stem 48, two ops, batch 1 ({what})",
                search_step_memory(patch, 48, 1, channels, classes, "two", "amp", "cuda", draw),
            )
        )
    return [{"what": what, "peak_gib": round(m.peak_gib, 2), "step_gib": round(m.step_gib, 2)} for what, m in rows]


class MemoryBudget:
    """fits(patch): whether a task's search step and U-ResNet training step, at the configured batch sizes
    (per process: the global batch over the job's processes), stem, sampling and precision, are
    predicted to fit `gb` GiB of GPU memory (steps after the first, the search step at its worst draw).
    `settings` is what the answer depends on besides the patch, for the plans' provenance."""

    def __init__(self, gb: float, settings: TaskSettings, in_channels: int, num_classes: int) -> None:
        if not gb > 0:
            raise ValueError(f"a memory budget must be positive, got {gb}")
        self.limit = gb * GIB
        self.search, self.train = settings.search, settings.train
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.batches = {
            rule: max(1, getattr(settings, rule).batch_size // _processes(settings, rule))
            for rule in ("search", "train")
        }
        search, train = dataclass_to_dict(self.search), dataclass_to_dict(self.train)
        self.settings = {
            "gpu_memory_gb": gb,
            "batch_per_process": dict(self.batches),
            "search": {k: search[k] for k in ("stem_channels", "sampling", "amp")},
            "train": {k: train[k] for k in ("uresnet_channels", "deep_supervision", "amp")},
            "cuda_overhead": list(CUDA_OVERHEAD),
        }

    def __call__(self, patch: Sequence[int]) -> bool:
        return all(m.peak <= self.limit for m in self.predictions(patch))

    def predictions(self, patch: Sequence[int]) -> list[StepMemory]:
        """The search step's and then (when the search step fits) the U-ResNet training step's memory."""
        search = search_step_memory(
            patch,
            self.search.stem_channels,
            self.batches["search"],
            self.in_channels,
            self.num_classes,
            self.search.sampling,
            "amp" if self.search.amp else "float32",
            "cuda",
        )
        if search.peak > self.limit:
            return [search]
        uresnet = {
            "arch": "uresnet",
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "base_channels": self.train.uresnet_channels,
            "combine_levels": self.train.deep_supervision,
        }
        precision = "amp" if self.train.amp else "float32"
        return [search, training_step_memory(uresnet, patch, self.batches["train"], precision, "cuda")]


def _processes(settings: TaskSettings, rule: str) -> int:
    resources = settings.launcher.resources(rule)
    return (resources.nodes or 1) * resources.processes_per_node


def budget_for(settings: TaskSettings, in_channels: int, num_classes: int) -> MemoryBudget | None:
    """The plan's memory budget (plan.gpu_memory_gb), or None when none is configured."""
    gb = settings.plan.gpu_memory_gb
    return None if gb is None else MemoryBudget(gb, settings, in_channels, num_classes)


def _check(patch: Sequence[int], batch: int, precision: str, device: str) -> tuple[torch.device, bool]:
    """The device the shadows report (meta stands for CUDA) and whether AMP is on."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if precision == "amp" and device == "cpu":
        raise ValueError("AMP runs on CUDA only: a CPU step is float32 (scnas.train.engine.Precision)")
    if len(patch) != 3 or min(patch) < 1 or batch < 1:
        raise ValueError(f"need a 3D patch of positive sizes and a positive batch, got {tuple(patch)} and {batch}")
    return (_CPU if device == "cpu" else _META), precision == "amp"


class _Shadow(torch.Tensor):
    """A tensor that reports `device` (the CPU, or meta for CUDA's code paths) but holds a meta tensor:
    operations run as meta kernels and their outputs are shadows again, so code that looks at the device
    takes that device's path. Outputs of operations that return new tensors are made from a cache of
    their shapes, strides and dtypes by operation and input metadata (meta kernels, many written in
    Python, would cost most of a simulation otherwise)."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device: torch.device) -> "_Shadow":
        shadow = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            device=device,
        )
        shadow.elem = elem
        return shadow

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        shadows: dict[int, _Shadow] = {}
        device = kwargs.get("device")

        def unwrap(value: Any) -> Any:
            nonlocal device
            if isinstance(value, _Shadow):
                device = device or value.device
                shadows[id(value.elem)] = value
                return value.elem
            if isinstance(value, torch.Tensor):
                return value.to(_META)
            return _META if isinstance(value, torch.device) else value

        args, kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        key = _cache_key(func, args, kwargs)
        if key is not None and key in _OUTPUTS:
            out = tuple(
                torch.empty_strided(size, stride, dtype=dtype, device=_META) for size, stride, dtype in _OUTPUTS[key]
            )
            out = out if _returns_tuple(func) else out[0]
        else:
            out = func(*args, **kwargs)
            if key is not None:
                flat = out if isinstance(out, tuple) else (out,)
                if all(isinstance(t, torch.Tensor) for t in flat):
                    _OUTPUTS[key] = tuple((t.shape, t.stride(), t.dtype) for t in flat)
        device = torch.device(device or _CPU)

        def wrap(value: Any) -> Any:
            if not isinstance(value, torch.Tensor):
                return value
            return shadows[id(value)] if id(value) in shadows else _Shadow(value, device)

        return tree_map(wrap, out)


_OUTPUTS: dict[tuple, tuple] = {}
_CACHEABLE: dict[Any, bool] = {}


def _cache_key(func: Any, args: tuple, kwargs: dict) -> tuple | None:
    """A key for operations whose outputs are new tensors (no views, no in-place): the operation and the
    metadata of its arguments; None for the others."""
    if func not in _CACHEABLE:
        schema = func._schema
        _CACHEABLE[func] = not schema.is_mutable and all(r.alias_info is None for r in schema.returns)
    if not _CACHEABLE[func]:
        return None
    try:
        key = (func, _describe(args), _describe(tuple(sorted(kwargs.items()))))
        hash(key)
    except TypeError:
        return None
    return key


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype, value.storage_offset())
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    return value


def _returns_tuple(func: Any) -> bool:
    return len(func._schema.returns) != 1


class _AsCPU(torch.autograd.Function):
    """A shadow as a CPU shadow (gradients flow back as they came): the loss runs on the CPU path, since
    autocast, which it switches off, accepts no meta device."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        ctx.device = t.device
        return _Shadow(t.elem, _CPU)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _Shadow(grad.elem, ctx.device)


class _Tracker(TorchDispatchMode):
    """Bytes of the tensor storages alive, from their allocation to their release, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self._refs: dict[int, weakref.ref] = {}
        self.live = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        storage = (t.elem if isinstance(t, _Shadow) else t).untyped_storage()
        key = storage._cdata
        if key in self._refs:
            return
        size = storage.nbytes()

        def release(_: Any, key: int = key, size: int = size) -> None:
            if self._refs.pop(key, None) is not None:
                self.live -= size

        self._refs[key] = weakref.ref(storage, release)
        self.live += size
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


class _SampledCells:
    """The search network's forward with fixed draws, whose weights carry alpha's gradient (their value is
    the draw's, their gradient flows to alpha as the sampler's does)."""

    def __init__(self, net: nn.Module, draws: dict[str, Any], device: torch.device) -> None:
        self.net, self.draws, self.device = net, draws, device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from scnas.nas.sampling import EdgeSample

        samples = {}
        for t, s in self.draws.items():
            alpha = self.net.alphas[t]
            value = _Shadow(s.weights.detach().to(_META, alpha.dtype), self.device)
            samples[t] = EdgeSample(weights=alpha - alpha.detach() + value, active=s.active)
        return self.net.run_cells(x, samples)

    def used(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """The parameters among `params` that get a gradient: all but those of the operations not drawn."""
        from scnas.nas.cells import edge_key

        idle = set()
        for plan, cell in zip(self.net.macro, self.net.cells):
            for index, (i, j) in enumerate(self.net.edges):
                active = self.draws[plan.cell_type].active[index]
                for k, op in enumerate(cell.edges[edge_key(i, j)].ops):
                    if k not in active:
                        idle.update(id(p) for p in op.parameters())
        return [p for p in params if id(p) not in idle]


def _build(build: Callable[[], nn.Module], device: torch.device, amp: bool) -> nn.Module:
    with torch.device("meta"):
        net = build().to(AMP_DTYPE if amp else torch.float32)
    for module in net.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = nn.Parameter(_Shadow(p.detach(), device), requires_grad=p.requires_grad)
    return net.train()


def _batch(
    channels: int, patch: Sequence[int], batch: int, device: torch.device, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image batch and its labels (int16, as the patch sampler gives them)."""
    x = torch.empty((batch, channels, *patch), dtype=AMP_DTYPE if amp else torch.float32, device=_META)
    y = torch.empty((batch, *patch), dtype=torch.int16, device=_META)
    return _Shadow(x, device), _Shadow(y, device)


def _bytes(tracker: _Tracker, size: int) -> torch.Tensor:
    """`size` bytes held while the returned tensor lives."""
    block = torch.empty(size, dtype=torch.uint8, device=_META)
    tracker.track(block)
    return block


def _simulate(
    net: nn.Module,
    halves: list[tuple[tuple[torch.Tensor, torch.Tensor], list[nn.Parameter], Callable, list | None]],
    device: torch.device,
    amp: bool,
    warm: bool,
) -> StepMemory:
    """Run the half-steps (batch, parameters to update, forward, the parameters that get a gradient or None
    for all) one after the other, tracked.

    Adam is counted, not run: two float32 moments per parameter it has seen a gradient for (made at its
    first step; all parameters on a warm step) and the temporaries of its step (two of the largest
    parameter at a time on the CPU, where it runs per tensor; a float32 copy of all parameters with
    foreach, as on CUDA). A warm step starts with last step's gradients (float32; of the same draw's
    operations in a search step), freed by zero_grad. Under AMP the network and the batches are half
    precision, which gives every activation the dtype autocast gives it; what autocast keeps in float32 is
    then added by count: the parameters, the gradients autograd makes (all of them, at the peak), the
    images, and the half copies autocast makes of the weights and of an image for the convolutions.
    """
    tracker = _Tracker()
    numel = lambda params: sum(p.numel() for p in params)  # noqa: E731
    with tracker:
        for t in (*net.parameters(), *(t for (batch, *_) in halves for t in batch)):
            tracker.track(t)
        moments = [_bytes(tracker, 8 * numel(params)) if warm else None for _, params, _, _ in halves]
        gradients = [
            _bytes(tracker, 4 * numel(params if used is None else used)) if warm else None
            for _, params, _, used in halves
        ]
        resident, tracker.peak = tracker.live, tracker.live
        for i, ((x, y), params, forward, _) in enumerate(halves):
            logits = forward(x)
            if device != _CPU:
                logits, y = _AsCPU.apply(logits), _Shadow(y.elem, _CPU)
            loss = jaccard_loss(logits, y)
            del logits
            gradients[i] = None
            for p in params:
                p.grad = None
            loss.backward(inputs=params)
            del loss
            stepped = [p for p in params if p.grad is not None]
            if moments[i] is None:
                moments[i] = _bytes(tracker, 8 * numel(stepped))
            largest = max((p.numel() for p in stepped), default=0)
            _bytes(tracker, 8 * largest if device == _CPU else 4 * numel(stepped))
        peak = tracker.peak
    if amp:
        parameters = numel(net.parameters())
        images = [x.numel() for (x, _), *_ in halves]
        resident += 2 * parameters + 2 * sum(images)
        peak += 2 * parameters + 2 * sum(images) + 4 * parameters + 2 * max(images)
    fraction, constant = CPU_OVERHEAD if device == _CPU else CUDA_OVERHEAD
    overhead = int(fraction * (peak - resident) + constant)
    return StepMemory(peak=peak + overhead, resident=resident, simulated_peak=peak, overhead=overhead)
