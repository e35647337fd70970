"""One module per row of panels; each has rows() -> [(title, [panels])]."""
