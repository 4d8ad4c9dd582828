"""`ddfs raft add|promote|remove|transfer`: change the metadata group's membership.

    ddfs raft add ID HOST:PORT [--learner]   add a member (as a learner, then promoted
                                             once caught up, unless --learner)
    ddfs raft promote ID                     make a caught-up learner a voter
    ddfs raft remove ID                      remove a member (the leader too)
    ddfs raft transfer [ID]                  hand leadership to ID (default: the most
                                             caught-up voter)

Each command finds the leader through `--endpoints` (following NOT_LEADER
hints), and retries refusals that only mean "not now" (an election, another
change not yet committed, a learner still catching up) until `--timeout`.
A refusal that will not change (unknown member, last voter...) exits 1 with
the leader's reason.  Exit 0 means the change is committed.
"""

from __future__ import annotations

import argparse

#: Refusals that go away by themselves; anything else is final.
_RETRYABLE = ("retry", "behind", "in progress", "not acknowledged any entry")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tools.common import add_endpoints_argument, add_secret_argument

    add_endpoints_argument(parser)
    add_secret_argument(parser)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to keep retrying refusals that mean 'not now' (default 60)")
    command = parser.prog.split()[-1]
    if command == "transfer":
        parser.add_argument("id", type=int, nargs="?", default=0,
                            help="the voter to hand leadership to (default: the most caught up)")
        return
    parser.add_argument("id", type=int, help="the member's id")
    if command == "add":
        parser.add_argument("address", metavar="HOST:PORT", help="where the members reach it")
        parser.add_argument("--learner", action="store_true",
                            help="leave it a learner (do not promote it once caught up)")


def run(args: argparse.Namespace) -> int:
    import trio

    from coord.raft.rpc import ChangeReply, RaftChange, RaftTransfer
    from coord.rpc import Request
    from tools.cli import UserError
    from tools.common import parse_endpoints, read_secret, rpc_client

    secret = read_secret(args)
    endpoints = parse_endpoints(args.endpoints)
    command = args.raft_command

    async def ask(req: Request[ChangeReply], deadline: float) -> ChangeReply:
        reply = ChangeReply("UNAVAILABLE", "no member answered")
        async with rpc_client(secret) as rpc:
            hint: str | None = None
            for attempt in range(10_000):
                if trio.current_time() > deadline:
                    return reply
                address = hint or endpoints[attempt % len(endpoints)]
                hint = None
                try:
                    reply = await rpc.call(address, req, timeout=30.0)
                except Exception as exc:  # an unreachable member: try the next one
                    reply = ChangeReply("UNAVAILABLE", f"{address}: {exc}")
                    await trio.sleep(0.2)
                    continue
                if reply.status == "OK":
                    return reply
                if reply.status == "NOT_LEADER" and reply.leader:
                    hint = reply.leader
                    continue
                if reply.status == "REFUSED" and not any(w in reply.message for w in _RETRYABLE):
                    return reply
                await trio.sleep(0.3)
        return reply

    async def main() -> ChangeReply:
        deadline = trio.current_time() + args.timeout
        if command == "transfer":
            return await ask(RaftTransfer(args.id), deadline)
        if command == "add":
            kind = "add-learner"
            reply = await ask(RaftChange(kind, args.id, args.address), deadline)
            if reply.status != "OK" or args.learner:
                return reply
            print(f"added {args.id} as a learner: {reply.message}", flush=True)
            return await ask(RaftChange("promote", args.id), deadline)
        return await ask(RaftChange(command, args.id), deadline)

    reply = trio.run(main)
    if reply.status != "OK":
        raise UserError(f"raft {command} {args.id or ''}: {reply.status}: {reply.message}".strip())
    print(f"ok: {reply.message}")
    return 0
