"""Procedural synthetic hands, so the whole pipeline runs on a fresh machine with no download
(docs/method.md, "Synthetic hands").

* ``hand_params``: who a hand is (``HandIdentity``) and how one photo of it is taken (``Pose``);
* ``render``: draws one photo of one hand;
* ``dataset``: writes a folder per identity and registers the ``synthetic`` dataset;
* ``captions``: plain-word captions of the photos;
* ``pretrain``: contrastive pretraining of a tiny CLIP on the captioned photos;
* ``prompts``: how well learned identity prompts name training images (the demo's text-side figure).

Nothing is imported here, so reading hand parameters does not load torch.
"""
