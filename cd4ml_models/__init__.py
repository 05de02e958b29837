"""A model folder (manifest, trainer package, serving files): read, checked, packaged and pushed.

Shared by the `cd4ml` command and the local stack, which imports nothing of the command's; not part of the
function archive.
"""
