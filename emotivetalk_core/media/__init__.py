"""Media input and output: decoding audio (``audio``), writing and reading video (``video_io``),
finding the face in a portrait (``face_detect``) and cropping to it and pasting back (``face_crop``)."""
