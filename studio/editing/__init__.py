"""Editing methods composed over the one sampling loop: SDEdit (sdedit), DiffEdit (diffedit), shared masks."""
