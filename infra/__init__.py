"""The bottom layer: what every other layer leans on and nothing of theirs."""
