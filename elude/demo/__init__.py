"""The demo models: what the default run and the tests build offline, so every stage runs on real code
without a download. :mod:`.vit` (the tiny ViT trained on the digits: the default backbone), :mod:`.clip`
(a tiny CLIP trained on the digits' names: ``labels.model: demo:<seed>``) and :mod:`.judge` (a tiny random
LLaVA: ``judges.models: demo:<seed>``). A ``demo:<seed>`` name is recognised by
:func:`elude.models.demo_seed`."""
