"""Media input and output: decoding audio (``audio``), reading images (``image``), writing video
(``video_writer``) and reading it (``video_reader``), finding the face in a portrait
(``face_detect``) and cropping to it and pasting back (``face_crop``)."""
