"""The inference API: submit jobs, follow them, cancel them."""
