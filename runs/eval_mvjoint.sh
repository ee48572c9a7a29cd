#!/bin/bash
# issue 16: jointly denoised views (cross-view attention prior, runs/zero123_mv/model) vs the same prior sampling the
# views independently, into the same sparse-view LRM; ground-truth views for reference (same objects, threshold)
cd /work/main
python -m lrm.evaluate --eval-set data/eval/dev --method mv+lrm:checkpoints/mv-tiny \
  --set prior=runs/zero123_mvv/model --set steps=20 --sweep joint=true,false --set render_resolution=64 \
  --set threshold=8 --max-objects 8 --out runs/eval_mvjoint 2>&1 | grep -v "it/s" | tail -8
python -m lrm.evaluate --eval-set data/eval/dev --method gt-mv+lrm:checkpoints/mv-tiny --set render_resolution=64 \
  --set threshold=8 --max-objects 8 --out runs/eval_mvjoint_gt 2>&1 | grep -v "it/s" | tail -5
