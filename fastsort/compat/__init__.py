"""Drop-in replacements for difftopk and diffsort."""
