"""The prompt sets shipped with medzero (installed as ``medzero.prompts``); see medzero.core.prompts."""
