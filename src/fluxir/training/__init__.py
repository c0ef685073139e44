"""FluxIR training (paper Sec. 3.3 "Efficient Training Strategy", Sec. 4.1): one optimizer step, told in order.

B = per-process batch, C = 16 VAE channels, (h, w) = (H/8, W/8), N = h/2 * w/2 packed tokens, S = prompt tokens.

1. Data (``data``): FluxGen's pairs in aspect buckets; the global batch of step s is a
   function of (seed, s), drawn from one bucket; VAE Gaussians of HQ and x4-bicubic LQ cached on disk.
2. Batch: ``train.global_batch`` pairs per optimizer step (paper: 64) = ``batch_size`` per process x
   processes x accumulation micro-steps (``accumulation_steps``). Sample j of step s draws t, the noise
   z_1, the two VAE samples and the decoder crop from its own generator seeded by (seed, s, j), so any
   split of the global batch (1 GPU accumulating 64, or 4 GPUs x 16, or 8 x 8) trains on the same
   samples with the same randomness, and a resumed run sees exactly what an uninterrupted one would.
3. Loss (Eq. 5-10, ``loss``; the frozen models it runs through: ``models``):
       t = f(u) = clamp(u, 0, 1), u ~ U(-eps, 1 + eps)          (Eq. 5-6; P(t=0) = P(t=1) = eps/(1+2eps))
       z_t = (1 - t) z_0 + t z_1                                 (z_0 = HQ latent, z_1 ~ N(0, I))
       v_p = Flux(z_t, t, p, y) controlled by FluxIR(z_lq)      (Eq. 1-4, fluxir.models.adapter)
       v_gt = z_1 - z_0                                          (Eq. 7)
       L_MSE = ||v_p - v_gt||^2                                  (Eq. 8, mean over elements)
       L_P = ||V_d(z_0 + t v_p) - V_d(z_0 + t v_gt)||_1          (Eq. 9 as written, ``pixel_loss_form: paper``)
           or ||V_d(z_t - t v_p) - V_d(z_0)||_1                  (its clean-estimate reading, ``x0``)
       L = L_MSE + alpha L_P, alpha = 1                          (Eq. 10)
   The logit-normal sampler of SD3 (t = sigmoid(n), n ~ N(m, s)) is the ablation of Table 3. A
   guidance-distilled Flux gets the adapter's ``config.guidance``, saved with it for restoration.
4. Update: AdamW (paper: lr 1e-5) on the adapter only; Flux and the VAE are frozen. bf16 autocast,
   gradient checkpointing of Flux's blocks (and optionally of the VAE decoder), gradient clipping,
   constant lr after a linear warm-up.
5. Bookkeeping (``checkpoints``, ``validation``): a non-finite loss or gradient stops the run before the
   optimizer step (the last good checkpoint is never touched); every ``checkpoint_every`` steps rank 0
   writes an atomic checkpoint; a rerun with the same settings resumes from the newest. MLflow (rank 0,
   the active run): parameters, loss curves, lr, samples/s, peak memory, validation restorations.

Everything runs under ``accelerate``: ``python -m fluxir.training --env base`` on one process, or
``accelerate launch [--multi_gpu --num_processes 4] -m fluxir.training --env base`` on several (DDP;
the command line is ``__main__``); ``kedro run --pipeline=train`` calls the same ``loop.train``.

Imports go one way: ``config`` <- ``data`` <- ``models`` <- ``loss`` <- ``checkpoints``, ``validation`` <-
``loop`` <- ``__main__``; nothing imports back, and this package's ``__init__`` imports nothing. ``latents``
(the pre-compute of the VAE latents, ``python -m fluxir.training latents``) uses ``config`` and ``data`` only.
"""
