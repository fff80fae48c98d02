"""Writing-manner alignment: the inner LLM rewrites soft-format answers, reviews them, and the gap is measured."""
