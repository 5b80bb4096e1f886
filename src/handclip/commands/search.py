"""``handclip search``: rank a gallery's identities (or images) for query hand photos."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="gallery directory made by `handclip enrol`")
    parser.add_argument("--query", required=True, nargs="+", metavar="IMG", help="query hand photo(s)")
    parser.add_argument("--top-k", type=int, default=10, help="candidates per query (default 10)")
    parser.add_argument("--by", choices=["identity", "image"], default="identity",
                        help="rank people (best score over their images, default) or single images")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the one the gallery was enrolled with)")
    parser.add_argument("--index-type", choices=["auto", "flat", "pca", "ivf", "hnsw"], default="auto",
                        help="exact search (flat), or a shortlist from an approximate index re-scored exactly "
                             "(pca: full scan of 256-d projections; ivf, hnsw: faster, lower recall); "
                             "auto: flat up to 200,000 images, pca above unless its self-check finds it unfit")
    parser.add_argument("--html", default=None, metavar="OUT.html", help="write a page with thumbnails and scores")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write every candidate as JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def run(args) -> int:
    from ..errors import HandCLIPError
    from ..gallery import Gallery
    from ..gallery.enrol import load_encoder, search_images
    from ..gallery.html import write_search_html, write_search_json

    if args.top_k < 1:
        raise HandCLIPError(f"--top-k must be >= 1 (got {args.top_k})")
    gallery = Gallery.open(args.index)
    checkpoint = args.checkpoint or gallery.checkpoint
    if not checkpoint:
        raise HandCLIPError(f"gallery {args.index} does not record its model; pass --checkpoint")
    encoder = load_encoder(checkpoint, device=args.device)
    results = search_images(gallery, encoder, args.query, top_k=args.top_k, by=args.by,
                            index_type=args.index_type)
    for result in results:
        print(f"query {result.query}")
        for c in result.candidates:
            detail = f"{c.matched}/{c.num_images} images in top hits" if args.by == "identity" else c.path
            print(f"  {c.rank:3d}. {c.identity:<20} {c.score:.4f}  {detail}")
    info = {"gallery": str(gallery.index_dir), "checkpoint": encoder.checkpoint, "by": args.by,
            "top_k": args.top_k, "index_type": gallery.resolve_index_type(args.index_type),
            "score": "cosine similarity" + (" (best image per identity)" if args.by == "identity" else "")}
    if args.json:
        write_search_json(results, args.json, **info)
        print(f"wrote {args.json}")
    if args.html:
        write_search_html(results, args.html, gallery_dir=str(gallery.index_dir), by=args.by, checkpoint=encoder.checkpoint)
        print(f"wrote {args.html}")
    return 0
