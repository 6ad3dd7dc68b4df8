"""ComfyUI entry point of the EmotiveTalk node pack: registers the nodes, nothing else."""

# ComfyUI imports this file as the package named after the pack's folder. pytest (8 and later)
# imports it too, before every test, and where the folder's name is no Python identifier (the
# usual clone, "ComfyUI-EmotiveTalk") as a plain module outside any package: there is nothing to
# register then, and the relative import would fail every test of a user's checkout.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
