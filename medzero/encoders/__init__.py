"""Model loading, lowest module first: :mod:`.registry` (one :class:`~.registry.Family` row per
model family, one :class:`~.registry.ModelCfg` row per named model; a leaf), :mod:`.hub` (the hub
probe and cache), :mod:`.cache` (medzero's cache folder and text embeddings), :mod:`.installed`
(installed model packs), :mod:`.backends` (torch and the exported backends), :mod:`.factory`
(resolve and load what a user names) and :mod:`.packs` (make, install and verify packs, through the
factory).

Nothing here knows a modality's decoders or a task; the modality plug-ins (``medzero.audio``,
``medzero.image``) declare their families here. Importing this package imports nothing heavy.
"""
