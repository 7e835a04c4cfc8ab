"""Data: readers (``formats``), the synthetic world, joint transforms, collate and DataModules.

Kept import-light on purpose: import what you need from its module, e.g.
``lightning_seg.data.transforms.TrainTransform``, ``lightning_seg.data.collate.Collate``,
``lightning_seg.data.datamodules.CamVidDataModule``.
"""
