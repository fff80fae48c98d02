"""AI-feedback preference data: sample K answers per prompt, let a judge rate them, build pairs."""
