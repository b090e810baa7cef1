"""A learner's whole update as one graph (`train.compile`): `torch.compile(fullgraph=True)` on the CPU today, and
CUDA-graph replay (`compile_mode: reduce-overhead`) on a GPU, which needs the same thing: one graph with no break,
no host sync, device-side random numbers and a capturable optimizer step.

`GraphUpdate(learner, buffer)` readies the learner (`Learner.use_graphs`: counter streams, captured PackedAdams, the
guard on the device) and calls `Learner.graph_update` (sample a minibatch, update, guard) each time it is called,
compiled or, with `compiled=False`, eagerly: the reference the tests compare the compiled graph with, since the
counter streams differ from the eager path's generators. Host-side phase changes (BRAC's and BEAR's pretraining
and warm start) are the only thing that traces a new graph: one per phase, never one per update.

The compile is paid once per process and phase; inductor's FX graph and AOT autograd caches keep the generated
code on disk (`TORCHINDUCTOR_CACHE_DIR`, here ~/.cache/offline_sweeps/inductor unless set), so a resumed trial and
a second trial with the same shapes load it instead of generating it again (PyTorch docs, "Compile Time Caching
in torch.compile").
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

MODES = ("default", "reduce-overhead")    # reduce-overhead: CUDA graphs (unmeasured: no GPU was lent)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "offline_sweeps" / "inductor"


def configure_compiler() -> None:
    """Dynamo must trace `torch.autograd.grad` (`descend`'s gradients) into the graph instead of breaking on it; every
    learner of a class shares `graph_update`'s code, so past dynamo's 8 recompiles per code (a test or a benchmark
    builds dozens) it must fail rather than quietly run eagerly; inductor keeps its compiled code in this project's
    cache unless the user chose another folder."""
    torch._dynamo.config.trace_autograd_ops = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir()))


class GraphUpdate:
    """Calls run one update of `learner` on minibatches of `buffer`; `compile_seconds` is the time the first call
    of each phase took (tracing, code generation or a cache load, and that one update)."""

    def __init__(self, learner, buffer, compiled: bool = True, mode: str = "default"):
        if mode not in MODES:
            raise ValueError(f"compile mode {mode!r}: choose {' or '.join(MODES)}")
        if learner.streams is None:
            learner.use_graphs()
        self.learner, self.buffer = learner, buffer
        self.compiled = compiled
        if compiled:
            configure_compiler()
            # Static shapes: a population's shapes never change, and CUDA graphs need them fixed.
            self.function = torch.compile(learner.graph_update, fullgraph=True, dynamic=False, mode=mode)
        else:
            self.function = learner.graph_update
        self.compile_seconds = 0.0
        self._phases: set = set()

    def __call__(self) -> dict[str, torch.Tensor]:
        learner = self.learner
        learner.graph_phase = learner.phase()
        first = self.compiled and learner.graph_phase not in self._phases
        learner.prepare_batch(self.buffer)
        started = time.perf_counter()
        metrics = self.function(self.buffer)
        if first:
            self._phases.add(learner.graph_phase)
            self.compile_seconds += time.perf_counter() - started
        if learner.COUNTS_UPDATES:
            learner.updates += 1
        return metrics
