"""Tasks: the prompt-set schema and its YAML (:mod:`.schema`), scoring of embeddings against a
task's labels into verdicts and reasons (:mod:`.scoring`), and site calibration overlays applied to
a task (:mod:`.overlay`).
"""
