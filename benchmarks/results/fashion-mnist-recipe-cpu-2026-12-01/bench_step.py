import os, sys, time
os.environ.setdefault("MIXFAST_DISABLE_EXTENSION", "1")
import torch, torch.nn.functional as F
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
from mixfast import create_model
for patch, width, depth, heads, batch in [(7,64,3,2,64),(7,64,3,2,256),(7,128,4,4,128),(7,128,4,4,256),(7,96,4,3,256),(4,64,3,2,256),(4,96,4,3,256)]:
    m = create_model("vit_tiny_patch16_224", img_size=28, patch_size=patch, in_chans=1, num_classes=10,
                     depth=depth, embed_dim=width, num_heads=heads, decoder_dim=64, decoder_depth=1)
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x = torch.randn(batch, 1, 28, 28); y = torch.randint(0, 10, (batch,))
    for i in range(13):
        if i == 3: t = time.perf_counter()
        loss = F.cross_entropy(m.forward_sl(x), y); opt.zero_grad(); loss.backward(); opt.step()
    dt = (time.perf_counter() - t) / 10
    print(f"p{patch} w{width} d{depth} h{heads} b{batch}: {dt*1000:.0f} ms/step, {batch/dt:.0f} img/s, 55k epoch {55000/(batch/dt):.0f}s", flush=True)
