"""Broken backends planted for the conformance kit's tests, as module sources.

Each is usable in-process (:func:`planted_module`, for ``Registry.register``) or as a real installed
distribution (:func:`write_dist`: a module plus a ``*.dist-info`` with ``entry_points.txt`` in a
directory that goes on ``sys.path`` / ``PYTHONPATH``), so the same code runs both ways.
"""

from __future__ import annotations

import textwrap
import types
from pathlib import Path

from sapient_core.hookspecs import OPS

_HEADER = '''
import numpy as np
from sapient_core import OpDeclined, hookimpl
from sapient_backend_cpu import kernels

@hookimpl
def backend_capabilities():
    return {"api_version": 2, "device": "cpu", "available": True, "thread_safe": True,
            "description": "planted: %s"}
'''

#: name -> (what is wrong, the module's ops)
PLANTED: dict[str, tuple[str, str]] = {
    "wrongrms": ("rms_norm is off by a relative 1e-3", '''
@hookimpl
def rms_norm(x, weight, eps):
    return kernels.rms_norm(x, weight, eps) * np.float32(1 + 1e-3)

@hookimpl
def silu(x):
    return kernels.silu(x)
'''),
    "mutates": ("silu writes its result into its input", '''
@hookimpl
def silu(x):
    out = kernels.silu(x)
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        x[...] = out
        return x
    return out
'''),
    "raises": ("every op raises: it would only ever fall back", "".join(
        f'''
@hookimpl
def {op}({", ".join(spec.argnames)}):
    raise RuntimeError("no kernel for {op}")
''' for op, spec in OPS.items())),
    "wrongshape": ("linear_3d drops the last output feature", '''
@hookimpl
def linear_3d(x, weight):
    return kernels.linear_3d(x, weight)[..., :-1]
'''),
    "declines": ("declines every input of the ops it has", '''
@hookimpl
def rms_norm(x, weight, eps):
    raise OpDeclined("no input is good enough")

@hookimpl
def silu(x):
    raise OpDeclined("no input is good enough")
'''),
    "float64": ("add returns float64", '''
@hookimpl
def add(a, b):
    return np.add(np.asarray(a, np.float64), np.asarray(b, np.float64))
'''),
    "nanparity": ("silu turns NaN and Inf into numbers", '''
@hookimpl
def silu(x):
    return np.nan_to_num(kernels.silu(x))
'''),
    "ignoreswindow": ("gqa_attention takes every v2 argument but ignores sliding_window", '''
@hookimpl
def gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, softcap, kv_mask):
    return kernels.gqa_attention(q, k, v, n_kv_heads, causal, scale, None, softcap, kv_mask)
'''),
    "ignoressoftcap": ("gqa_attention and the logits ops take softcap but ignore it", '''
@hookimpl
def gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, softcap, kv_mask):
    return kernels.gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, None, kv_mask)

@hookimpl
def logits_from_hidden(hidden, lm_head, softcap):
    return kernels.logits_from_hidden(hidden, lm_head, None)
'''),
    "v1attention": ("a plugin written for hook API 1: gqa_attention and RoPE without the v2 arguments", '''
@hookimpl
def gqa_attention(q, k, v, n_kv_heads, causal):
    return kernels.gqa_attention(q, k, v, n_kv_heads, causal, None, None, None, None)

@hookimpl
def apply_rope_positions(x, positions, base):
    return kernels.apply_rope_positions(x, positions, base)
'''),
    "keepsdtype": ("returns the input's dtype (float16 and bfloat16 results for such input)", '''
@hookimpl
def silu(x):
    return kernels.silu(x).astype(x.dtype)

@hookimpl
def rms_norm(x, weight, eps):
    return kernels.rms_norm(x, weight, eps).astype(x.dtype)

@hookimpl
def add(a, b):
    return kernels.add(a, b).astype(a.dtype)
'''),
    "overflows": ("silu as x / (1 + exp(-x)): exp overflows for x < -88", '''
@hookimpl
def silu(x):
    x = np.asarray(x, np.float32)
    return x / (np.float32(1) + np.exp(-x))
'''),
}


#: Planted backends that declare an API version other than the current one.
API_VERSION = {"v1attention": 1}


def planted_source(name: str) -> str:
    what, body = PLANTED[name]
    header = textwrap.dedent(_HEADER % what)
    if name in API_VERSION:
        header = header.replace('"api_version": 2', f'"api_version": {API_VERSION[name]}')
    return header + body


def planted_module(name: str) -> types.ModuleType:
    """The planted backend ``name`` as a fresh module object (for ``Registry.register``)."""
    module = types.ModuleType(f"sapient_backend_{name}")
    exec(compile(planted_source(name), f"<planted {name}>", "exec"), module.__dict__)  # noqa: S102
    return module


def write_dist(site: Path, name: str, version: str = "0.1.0") -> None:
    """Install the planted backend ``name`` into ``site`` as distribution ``sapient-backend-<name>``."""
    site.mkdir(parents=True, exist_ok=True)
    module = f"sapient_backend_{name}"
    (site / f"{module}.py").write_text(planted_source(name))
    info = site / f"sapient_backend_{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sapient-backend-{name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[sapient_core.backends]\n{name} = {module}\n")


#: What :func:`off_by` perturbs: every element by a relative ``eps`` (the NMSE is ``eps**2``), or one
#: element by an absolute ``delta`` (the max abs error; the NMSE stays small).
OFF_BY_SOURCE = '''
import numpy as np
from sapient_core import hookimpl
from sapient_core.hookspecs import OPS
from sapient_core.testing.tolerances import TOLERANCES
from sapient_backend_cpu import kernels

KIND, FACTOR = %r, %r

@hookimpl
def backend_capabilities():
    return {"api_version": 2, "device": "cpu", "available": True, "thread_safe": True,
            "description": "planted: off by %%g x the tolerance (%%s)" %% (FACTOR, KIND)}

def _perturb(op, y):
    y = np.array(y, dtype=np.float32)
    tol = TOLERANCES[op]
    if (tol.nmse if KIND == "nmse" else tol.max_err) == 0:   # an exact op: over is one ulp off, under is exact
        return np.nextafter(y, np.float32(np.inf)).astype(np.float32) if FACTOR > 1 else y
    if KIND == "nmse":                       # NMSE = eps**2 = FACTOR * tol.nmse
        return (y * np.float32(1 + np.sqrt(FACTOR * tol.nmse))).astype(np.float32)
    finite = np.isfinite(y)
    scale = max(1.0, float(np.max(np.abs(y[finite])))) if finite.any() else 1.0
    i = int(np.argmax(np.where(finite, np.abs(y), -1)))
    y.flat[i] += np.float32(FACTOR * tol.max_err * scale)
    return y

def _op(name):
    kernel = getattr(kernels, name)
    args = ", ".join(OPS[name].argnames)
    ns = {"kernel": kernel, "_perturb": _perturb}
    exec(f"def {name}({args}):\\n    return _perturb({name!r}, kernel({args}))\\n", ns)
    return hookimpl(ns[name])

for _name in OPS:
    globals()[_name] = _op(_name)
'''


def off_by(kind: str, factor: float) -> types.ModuleType:
    """A backend whose every op is the CPU kernel with an error of ``factor`` times the kit's tolerance:
    ``kind="nmse"`` (every element off by a relative ``sqrt(factor * nmse)``) or ``"max_err"`` (the largest
    element off by ``factor * max_err * max(1, max |result|)``)."""
    module = types.ModuleType(f"sapient_backend_off_{kind}_{factor:g}")
    exec(compile(OFF_BY_SOURCE % (kind, factor), f"<planted off by {factor:g} x {kind}>", "exec"),  # noqa: S102
         module.__dict__)
    return module
