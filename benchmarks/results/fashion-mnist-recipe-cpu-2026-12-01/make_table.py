import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "study/runs.jsonl")]
print("| run | case | pipeline | labels | model (patch/width/depth/heads) | batch | blr | ssl_blr | epochs (ssl+sl) | warmup frac | ls | aug scale | layer_decay | final val % | test % | wall s (1 thread) | est. 2-thread s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    s = r["settings"]
    ep = f"{s['ssl_epochs'] if s['pipeline'] != 'sl' else 0}+{s['epochs']}"
    print(f"| {r['tag']} | {r['case']} | {s['pipeline']} | {r['n_train_labeled']} | {s['patch']}/{s['width']}/{s['depth']}/{s['heads']} | {s['batch']} | {s['blr']:g} | "
          f"{(format(s['ssl_blr'], 'g') if s['pipeline'] != 'sl' else 'n/a')} | {ep} | {s['warmup_frac']:g} | {s['ls']:g} | {s['aug'] or 'off'} | {s['layer_decay'] if s['layer_decay'] is not None else 'default'} | "
          f"{100*r['final_val']:.2f} | {100*r['test_top1']:.2f} | {r['wall_s']:.0f} | {0.55*r['wall_s']:.0f} |")
print()
for r in rows:
    print(f"- {r['tag']}: val/epoch " + " ".join(f"{100*e['val_top1']:.1f}" if e['val_top1'] is not None else f"({e['phase']})" for e in r["val_per_epoch"]))
