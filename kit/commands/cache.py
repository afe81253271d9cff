"""`kit cache`: what the frozen lower blocks' state cache holds, or empty it."""
import click

from kit.commands.options import friendly, say
from kit.engine.states import ROOT, cache_size, clear_cache, describe_cache


@click.command()
@click.option("--clear", is_flag=True, help="Delete every cached state.")
@friendly
def cache(clear):
    """Show (or --clear) the frozen lower blocks' state cache: runs/.state-cache, or $KIT_STATE_CACHE."""
    if clear:
        say(f"state cache {ROOT}: {clear_cache() / 2**30:.2f} GB deleted")
        return
    lines = describe_cache()
    say("\n".join(lines) if lines else f"state cache {ROOT}: empty")
    if lines:
        say(f"total {cache_size() / 2**30:.2f} GB; `kit cache --clear` deletes it")
