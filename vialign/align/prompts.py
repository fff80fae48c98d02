"""Default rewrite and review prompts. The toy world teaches its inner LLM these exact prompts, so the
toy recipe runs `vialign align rewrite` with its defaults."""

DEFAULT_REWRITE_PROMPT = (
    "Rewrite the following answer in your own words. Keep every fact exactly: add nothing, drop nothing, "
    "change nothing. If it already reads the way you would write it, return it unchanged. Reply with the "
    "answer only.\n\nAnswer: {text}"
)
DEFAULT_REVIEW_PROMPT = (
    "Do these two texts state exactly the same facts, with nothing added, dropped or changed? "
    "Reply with Yes or No.\n\nText A: {original}\n\nText B: {rewrite}"
)
DEFAULT_CLAIM_PROMPT = "Text: {text}\n\nDoes the text say that: {claim}\nAnswer Yes or No."
