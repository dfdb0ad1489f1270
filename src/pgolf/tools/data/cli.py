"""The data verbs: `pgolf data prepare`, `data verify`, `data fineweb`."""

from __future__ import annotations

import json
import os

from pgolf.tools.args import EXIT_FAIL, add_json
from pgolf.tools.data.docs import DEFAULT_CORPUS_VAL_DOCS
from pgolf.tools.data.fineweb import defaults_from_env, download_fineweb
from pgolf.tools.data.prepare import prepare
from pgolf.tools.data.verify import format_report, verify


def cmd_data_prepare(args) -> int:
    prepare(args.docs, args.out, val_docs=args.val_docs, vocab_size=args.vocab_size, name=args.name,
            tag=args.tag, shard_tokens=args.shard_tokens, tokenizer=args.tokenizer, force=args.force,
            threads=args.threads, progress=True)
    return 0


def cmd_data_verify(args) -> int:
    rep = verify(args.data, args.tokenizer, vocab_size=args.vocab_size, check_sha=not args.no_sha,
                 progress=not args.json, threads=args.threads)
    print(json.dumps(rep.to_json(), indent=2) if args.json else format_report(rep))
    return 0 if rep.ok else EXIT_FAIL


def cmd_data_fineweb(args) -> int:
    env = defaults_from_env(os.environ)
    summary = download_fineweb(args.out, variant=args.variant, train_shards=args.train_shards,
                               repo_id=args.repo_id or env["repo_id"],
                               remote_root=args.remote_root if args.remote_root is not None else env["remote_root"],
                               revision=args.revision, progress=True)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def add_parsers(verbs) -> None:
    dp = verbs.add_parser("data", help="prepare, download and verify challenge-format data")
    ds = dp.add_subparsers(dest="sub", metavar="SUB", required=True)
    prep = ds.add_parser("prepare", help="documents (JSONL) -> tokenizer + shards + manifest")
    prep.add_argument("--docs", action="append", required=True, metavar="FILE",
                      help="JSONL documents with a 'text' field (.xz/.gz ok); repeat to concatenate in order; "
                           f"'default' = the embedded corpus (first {DEFAULT_CORPUS_VAL_DOCS} docs = validation)")
    prep.add_argument("--val-docs", type=int, required=True, help="the first N documents are the validation split")
    prep.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary to train")
    prep.add_argument("--out", required=True, help="output root (datasets/, tokenizers/, manifest.json)")
    prep.add_argument("--name", default="fineweb", help="name prefix (default 'fineweb', the challenge's)")
    prep.add_argument("--tag", default="10B", help="dataset tag: datasets/{name}{tag}_sp{V} (default '10B')")
    prep.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default 1e8)")
    prep.add_argument("--tokenizer", default=None, metavar="MODEL", help="reuse this SentencePiece model")
    prep.add_argument("--threads", type=int, default=None)
    prep.add_argument("--force", action="store_true", help="replace existing shards / tokenizer in --out")
    prep.set_defaults(fn=cmd_data_prepare)

    ver = ds.add_parser("verify", help="check shards, sha256 and exact byte accounting of the val stream")
    ver.add_argument("--data", required=True, help="dataset dir (with shards) or a root with datasets/<name>/")
    ver.add_argument("--tokenizer", default=None, metavar="MODEL")
    ver.add_argument("--vocab-size", type=int, default=None, help="model vocab for the token range check")
    ver.add_argument("--no-sha", action="store_true", help="skip sha256 hashing")
    ver.add_argument("--threads", type=int, default=1)
    add_json(ver)
    ver.set_defaults(fn=cmd_data_verify)

    fw = ds.add_parser("fineweb", help="download the challenge's published FineWeb shards (huggingface_hub)")
    fw.add_argument("--variant", default="sp1024")
    fw.add_argument("--train-shards", type=int, default=80)
    fw.add_argument("--out", required=True)
    fw.add_argument("--repo-id", default=None, help="default willdepueoai/parameter-golf or MATCHED_FINEWEB_REPO_ID")
    fw.add_argument("--remote-root", default=None, help="default 'datasets' or MATCHED_FINEWEB_REMOTE_ROOT_PREFIX")
    fw.add_argument("--revision", default=None, help="pin a repo revision (commit sha)")
    fw.set_defaults(fn=cmd_data_fineweb)
