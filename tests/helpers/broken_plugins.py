"""Broken plugins, one per way a plugin can be refused: (case, module source, error class, message regex).

Installed as entry point ``bad`` (module ``sapient_fake_bad``, distribution ``fake-bad`` 0.3) by
tests/test_core_plugins.py; tests/test_core_cli.py installs them all at once under other names.
"""

from __future__ import annotations

from sapient_core import IncompatiblePluginError, PluginLoadError, PluginValidationError

from .fakeplugins import caps_dict, plugin_source

HOOK = "from sapient_core import hookimpl\n"
MOD = "sapient_fake_bad"


def caps_src(**kw):
    return plugin_source(caps=caps_dict(**kw))


def with_hook(code):
    return plugin_source(device="metal", extra=code)


BROKEN = [
    ("import-error", plugin_source(header="import sapient_no_such_accelerator_lib"), PluginLoadError,
     rf"importing {MOD} failed: ModuleNotFoundError: No module named 'sapient_no_such_accelerator_lib'"),
    ("import-raises", plugin_source(header="raise RuntimeError('the GPU driver crashed at import')"), PluginLoadError,
     rf"importing {MOD} failed: RuntimeError: the GPU driver crashed at import"),
    ("import-exits", plugin_source(header="import sys; sys.exit(3)"), PluginLoadError,
     rf"importing {MOD} failed: SystemExit: 3"),
    ("import-base-exception", plugin_source(header="class GPUPanic(BaseException):\n    pass\n"
                                                   "raise GPUPanic('the driver panicked')"), PluginLoadError,
     rf"importing {MOD} failed: GPUPanic: the driver panicked"),
    ("caps-exit", HOOK + "@hookimpl\ndef backend_capabilities():\n    raise SystemExit(4)\n", PluginLoadError,
     r"backend_capabilities\(\) raised SystemExit: 4"),
    ("caps-generator-exit", HOOK + "@hookimpl\ndef backend_capabilities():\n    raise GeneratorExit('odd')\n",
     PluginLoadError, r"backend_capabilities\(\) raised GeneratorExit: odd"),
    ("caps-raise", plugin_source(caps_expr="RAISE"), PluginLoadError,
     r"backend_capabilities\(\) raised RuntimeError: the fake driver crashed while probing the device"),
    ("caps-list", plugin_source(caps_expr="['metal']"), PluginValidationError,
     r"backend_capabilities\(\) returned list \['metal'\], not a dict"),
    ("caps-none", plugin_source(caps_expr="None"), PluginValidationError,
     r"backend_capabilities\(\) returned NoneType None, not a dict"),
    ("caps-missing-keys", plugin_source(caps={"api_version": 1, "device": "metal"}), PluginValidationError,
     r"backend_capabilities\(\) lacks the required key 'available'; backend_capabilities\(\) lacks the "
     r"required key 'thread_safe'"),
    ("caps-available-str", caps_src(available="yes"), PluginValidationError,
     r"backend_capabilities\(\)\['available'\] must be a bool, got 'yes'"),
    ("caps-thread-safe-int", caps_src(thread_safe=1), PluginValidationError,
     r"backend_capabilities\(\)\['thread_safe'\] must be a bool, got 1"),
    ("caps-priority-str", caps_src(priority="high"), PluginValidationError, r"\['priority'\] must be an int, got 'high' \(str\)"),
    ("caps-api-version-str", caps_src(api_version="1"), PluginValidationError, r"\['api_version'\] must be an int, got '1' \(str\)"),
    ("caps-device-upper", caps_src(device="Metal"), PluginValidationError,
     r"\['device'\] must be a non-empty lowercase device name such as 'cpu', 'metal' or 'cuda', got 'Metal'"),
    ("caps-device-int", caps_src(device=3), PluginValidationError,
     r"backend_capabilities\(\)\['device'\] must be a str, got 3"),
    ("caps-no-reason", caps_src(available=False), PluginValidationError, r"available is False, so 'reason' must say why"),
    ("caps-devices-garbage", caps_src(unavailable_devices={"metal": 1}), PluginValidationError,
     r"\['unavailable_devices'\]\['metal'\] must be a str, got 1 \(int\)"),
    ("no-caps-hook", HOOK + "@hookimpl\ndef silu(x):\n    return x\n", PluginValidationError,
     r"does not implement backend_capabilities, which every plugin must"),
    ("typo", with_hook("@hookimpl\ndef rms_norn(x, weight, eps):\n    return x\n"), PluginValidationError,
     r"'rms_norn' is marked @hookimpl but no hook spec has that name \(did you mean 'rms_norm'\?\)\. To remedy "
     r"this, rename it"),
    ("unknown-hook", with_hook("@hookimpl\ndef frobnicate():\n    return 1\n"), PluginValidationError,
     r"'frobnicate' is marked @hookimpl but no hook spec has that name\. To remedy this"),
    ("unknown-arg", with_hook("@hookimpl\ndef silu(x, inplace):\n    return x\n"), PluginValidationError,
     r"silu\(x, inplace\) has argument 'inplace', which the spec does not have\. To remedy this, use \(a subset "
     r"of\) the spec's arguments \('x',\)"),
    ("default-value", with_hook("@hookimpl\ndef gelu(x, approximate='tanh'):\n    return x\n"), PluginValidationError,
     r"gelu\(x, approximate='tanh'\) gives 'approximate' a default value \('tanh'\); pluggy would never pass the "
     r"caller's value\. To remedy this, remove the default"),
    ("varargs", with_hook("@hookimpl\ndef add(*arrays):\n    return arrays[0]\n"), PluginValidationError,
     r"add\(\*arrays\) takes \*arrays\. To remedy this, name the arguments it uses, from \('a', 'b'\)"),
    ("varkw", with_hook("@hookimpl\ndef mul(a, **kw):\n    return a\n"), PluginValidationError,
     r"mul\(a, \*\*kw\) takes \*\*kw\."),
    ("keyword-only", with_hook("@hookimpl\ndef silu(*, x):\n    return x\n"), PluginValidationError,
     r"silu\(\*, x\) takes 'x' as keyword-only, but hooks are called with positional arguments"),
    ("wrapper", with_hook("@hookimpl(wrapper=True)\ndef silu(x):\n    return (yield)\n"), PluginValidationError,
     r"silu is a hook wrapper; sapient_core calls each plugin's implementation directly"),
    ("api-too-old", caps_src(api_version=0), IncompatiblePluginError,
     r"\(fake-bad 0\.3\) was built for hook API version 0, but sapient-core \S+ speaks version 2 \(and "
     r"accepts 1, 2\)\. To remedy this: pip install --upgrade fake-bad"),
    ("api-too-new", caps_src(api_version=9), IncompatiblePluginError,
     r"was built for hook API version 9, but sapient-core \S+ speaks version 2 \(and accepts 1, 2\)\. To remedy "
     r"this: pip install --upgrade sapient-core"),
    ("caps-unknown-key", caps_src(priorty=3), PluginValidationError,
     r"backend_capabilities\(\)\['priorty'\] is not a known key \(the known keys are api_version, device, "
     r"available, thread_safe, reason, priority, version, unavailable_devices, description\)"),
]
