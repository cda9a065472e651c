"""Every default of minip2p, in one place: the API, the controllers and the command line read them from here.

Sampling follows diffusers' Stable Diffusion pipeline; the Prompt-to-Prompt settings follow the paper's
notebook (google/prompt-to-prompt, prompt-to-prompt_stable.ipynb) unless a comment says otherwise.
"""

# sampling
STEPS = 50  # DDIM steps
SAMPLERS = ("ddim", "dpm++")  # the paper's DDIM first (the default); DPM-Solver++(2M) needs fewer steps
DPM_STEPS = 20  # DPM-Solver++'s steps (diffusers' recommendation: 20-25)
GUIDANCE_SCALE = 7.5  # classifier-free guidance
SDXL_GUIDANCE_SCALE = 5.0  # SDXL's (diffusers' StableDiffusionXLPipeline)
SD3_STEPS = 28  # SD3's Euler steps (diffusers' StableDiffusion3Pipeline)
SD3_GUIDANCE_SCALE = 7.0  # SD3's guidance (the same)
SD3_SAMPLERS = ("euler",)  # flow matching's Euler steps
ALL_SAMPLERS = SAMPLERS + SD3_SAMPLERS  # what a sweep spec may name (the model then says if it takes it)
ETA = 0.0  # DDIM eta: 0 is deterministic
SWEEP_BATCH = 4  # a sweep computes up to this many edits of one source and seed in one batch
SEED = 0  # the command line's seed (the API draws one at random when seed is None, and reports it)

# Prompt-to-Prompt edits
CROSS_REPLACE_STEPS = 0.8  # fraction of the steps a target takes the source's cross-attention
SELF_REPLACE_STEPS = 0.4  # fraction of the steps a target takes the source's self-attention...
SD3_SELF_REPLACE_STEPS = 0.6  # ...and an MM-DiT's image->image maps (docs/RESULTS.md, mmdit_places.py)
SELF_MAX_FRACTION = 0.25  # self-attention replaced at maps up to this fraction of the latent per side...
SELF_MIN_TOKENS = 16**2  # ...and at every map of at most 16x16 queries (the official code's absolute rule)

# LocalBlend
BLEND_THRESHOLD = 0.3  # a cell is in the region where the words' attention exceeds this share of its maximum
MMDIT_BLEND_THRESHOLD = 0.6  # the same cut of an MM-DiT's text->image maps (docs/RESULTS.md, "LocalBlend")
START_BLEND = 0.2  # blend from this fraction of the steps on (the null-text notebook; the SD notebook: 0)
BLEND_RES_FRACTION = 0.25  # the maps the mask is read from, as a fraction of the latent size...
MIN_MAP_SIZE = 8  # ...but never maps coarser than 8x8 (a 16x16 latent's 1/4 would be 4x4)

# after an inversion, the inverted noise is far from Gaussian: keeping the source's self-attention longer and
# at every size holds the structure (docs/RESULTS.md, "Real images")
KEEP_STRUCTURE = {"self_replace_steps": 0.8, "self_max_fraction": 1.0}

# inversion
INVERSION_METHOD = "null-text"
NULL_TEXT_INNER_STEPS = 10  # Adam steps per timestep, at most (the null-text paper's code)
NULL_TEXT_EARLY_STOP = 1e-5  # stop a timestep's inner loop once the loss is under this + i * 2e-5
INVERSION_STEPS_OFFSET = 0  # the null-text code's DDIM schedule; sampling uses diffusers' 1

# AttentionStore
STORE_SELF_MAX_TOKENS = 32**2  # self-attention maps are kept only up to this many queries (32x32)
