"""Human-preference curation (Align2LLaVA): reward models on quality ratings, scoring, cascade selection."""
