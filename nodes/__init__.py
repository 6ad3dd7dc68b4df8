"""Thin ComfyUI adapters over emotivetalk_core: ComfyUI types in, one core call, ComfyUI types out.

The node classes arrive with the nodes issue; until then the pack registers no node.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
