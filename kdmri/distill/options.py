"""The values of the loss terms' options, in a leaf without torch: the term table
(:mod:`kdmri.distill.terms`, which checks a spec's ``loss_options`` and is read without
torch) and the loss functions (:mod:`kdmri.distill.losses`, which take them) both read them
from here, so that neither imports the other for them."""

#: Norms of the reconstruction term, its option ``norm`` (the first: default).
RECONSTRUCTION_NORMS = ("l1", "l2", "ssim")

#: The correlation-congruence term's kernel width gamma (``cc``: its formula and function).
CC_GAMMA = 0.4

#: The dimension of the embeddings the ``cc_embedded`` term learns (torchdistill's and
#: RepDistiller's 128).
CC_EMBEDDING_DIM = 128

#: VID's predicted variance at initialisation and its floor (``vid``: Ahn et al., 2019, as
#: their released code sets them).
VID_INIT_VARIANCE = 5.0
VID_MIN_VARIANCE = 1e-5

#: The margin of the activation-boundary term (``ab``: Heo et al., 2019).
AB_MARGIN = 1.0
