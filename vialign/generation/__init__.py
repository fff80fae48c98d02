"""Generation backends shared by scoring, sampling, judging and evaluation."""
