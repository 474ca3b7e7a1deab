"""X-TFCLIP for aerial-ground video person re-identification.

Modules, in the order their imports flow: `config` (run settings), `files` (atomic writes),
`paths` and `progress` (project-root paths, progress display), `data` (AG-VPReID layout,
synthetic set, sampling, transforms), `model` (the network on open_clip), `losses`, `evaluation`
(pure retrieval metrics), `engine` (training and inference), `workbook` (notebooks via papermill).
"""
__version__ = "0.1.0"
