"""The prompt sets shipped with medzero (installed as ``medzero.prompts``); see medzero.tasks.schema."""
