"""rsrs.model.rsrefseg2: RSRefSeg 2 (SAM 2.1 Hiera + SigLIP2 + cascaded prompter), the second architecture.

Built through :func:`rsrs.model.build_model` / :func:`rsrs.model.load_model` from a config with
``architecture: rsrefseg2`` (presets ``rsrefseg2-l``, ``rsrefseg2-b+``, ``rsrefseg2-s``, ``rsrefseg2-t``, ``tiny2``);
it offers the same inference protocol as :class:`rsrs.model.RSRefSeg`.
"""
