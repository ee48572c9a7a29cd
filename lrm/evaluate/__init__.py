"""Evaluation harness: one protocol for every method (docs/evaluation.md).

    python -m lrm.evaluate --eval-set PATH|dev --method lrm,sphere,hull,meshes:DIR [--out DIR] [--sweep k=v1,v2]

Modules: ``evalset`` (eval-set folders: writer, reader, builder, protocol cameras), ``methods`` (plug-in registry
and built-in methods/baselines), ``metrics``, ``align``, ``runner``
(resumable per-object evaluation), ``report`` (results.csv, report.md, figures), ``cli`` (this command).
"""


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)


def __getattr__(name):  # lazy re-exports: importing lrm.evaluate stays cheap
    if name in ("register_method", "Method", "Prediction", "make_method"):
        from . import methods

        return getattr(methods, name)
    if name in ("load_eval_set", "write_eval_object", "protocol_cameras", "build_eval_set"):
        from . import evalset

        return getattr(evalset, name)
    raise AttributeError(name)
