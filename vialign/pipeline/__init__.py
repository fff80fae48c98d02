"""Recipes: stages with content-addressed caching."""
