"""The allocator setting keeps freed temporaries for reuse: a loop allocating the same buffers again
faults no new pages in (measured in fresh processes, since the setting is process-wide)."""
import subprocess
import sys

CODE = """
import resource, sys
from bench.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()

def one_call():  # eight 10 MB temporaries alive at once, as a JBU stage has, then all freed
    buffers = [bytearray(10 * 2**20) for _ in range(8)]
    del buffers

one_call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    one_call()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_kept_freed_memory_is_reused_without_page_faults():
    default, kept = page_faults("default"), page_faults("keep")
    # 5 calls x 80 MB is 102400 pages of 4 KB: by default glibc trims and faults them in again
    assert default > 50_000, default
    assert kept < default // 20, (kept, default)
