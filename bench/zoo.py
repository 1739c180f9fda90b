"""Coverage sweep over the torchvision zoo; the logic lives in depgraph_prune/zoo.py (also `depgraph-prune zoo`).

    python bench/zoo.py [--kind classification|segmentation|detection|video|all] [--family resnet]
                        [--ratio 0.5] [--max-size 224] [--out docs/zoo.md]
"""
from depgraph_prune.zoo import main

if __name__ == "__main__":
    main(prog="python bench/zoo.py", default_out="docs/zoo.md")
