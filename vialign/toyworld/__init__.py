"""The synthetic toy world: scenes, renderer, teacher- and own-manner texts, annotations, eval sets."""
