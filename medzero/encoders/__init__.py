"""Model loading: one :class:`Family` row per model family, named models, the factory that resolves
and loads them (:mod:`.factory`), inference backends (:mod:`.backends`), the hub probe
(:mod:`.hub`), model packs (:mod:`.packs`) and the caches (:mod:`.cache`).

Nothing here knows a modality's decoders or a task; the modality plug-ins (``medzero.audio``,
``medzero.image``) register their families here. Importing this package imports nothing heavy.
"""
