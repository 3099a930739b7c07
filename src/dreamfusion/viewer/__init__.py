"""The web viewer of a run: its mesh and live renders of its field, served with viser."""
