"""benches/studies/man_roff.py: the NAME line of a man page read from its roff source, on
hand-written pages gzip'd into tmp_path as Debian installs them (man and mdoc macros, escapes,
several names, .so redirects, pages without a NAME line)."""

from __future__ import annotations

import gzip
from pathlib import Path

from tiny_run import load_bench_script

man_roff = load_bench_script("studies/man_roff.py")


def read_gzipped(tmp_path: Path, source: str | bytes, name: str = "page.1.gz") -> str:
    """`source` written gzip'd to tmp_path/name and read back as datasets.py reads pages."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(source.encode() if isinstance(source, str) else source))
    return man_roff.read_page(path)


def test_several_names_and_their_description(tmp_path: Path) -> None:
    """ "a, b, c \\- text" gives every name and the text after the dash, the dash itself gone."""
    page = read_gzipped(
        tmp_path,
        '.\\" Copyright line\n.TH OPEN 2 2023-02-05 "Linux man-pages 6.03"\n.SH NAME\n'
        "open, openat, creat \\- open and possibly create a file\n.SH LIBRARY\n"
        "Standard C library \\- libc\n",
    )
    assert man_roff.parse_name_section(page) == man_roff.NameLine(
        ("open", "openat", "creat"), "open and possibly create a file"
    )


def test_names_over_two_lines_and_escaped_hyphens_in_names(tmp_path: Path) -> None:
    """A NAME line wrapped over lines is one line; "\\-" inside a name is a hyphen of the name,
    the separating dash is the one between spaces."""
    page = read_gzipped(
        tmp_path,
        ".SH NAME\nprintf, fprintf,\nvsnprintf, git\\-add \\- formatted output conversion\n"
        ".SH SYNOPSIS\n",
    )
    line = man_roff.parse_name_section(page)
    assert line.names == ("printf", "fprintf", "vsnprintf", "git-add")
    assert line.description == "formatted output conversion"


def test_pod2man_escapes_and_index_entries(tmp_path: Path) -> None:
    """pod2man's quoted heading, .IX entry, strings (\\*(L" \\*(R" \\*(C`), fonts (\\fB \\f(CW
    \\fP), zero-width \\& and special characters (\\(em, \\[u00E9], \\(aq) print as text."""
    page = read_gzipped(
        tmp_path,
        '.SH "NAME"\n.IX Header "NAME"\n\\fBAlgorithm::Diff\\fR \\- Compute \\*(L"intelligent'
        '\\*(R" differences \\f(CWbetween\\fP files\\(em caf\\[u00E9] \\(aqs\\& lists\\s-1.\\s0\n'
        ".SH SYNOPSIS\n",
    )
    assert man_roff.parse_name_section(page) == man_roff.NameLine(
        ("Algorithm::Diff",),
        'Compute "intelligent" differences between files\u2014 caf\u00e9 \'s lists.',
    )


def test_font_macros_and_mdoc(tmp_path: Path) -> None:
    """.B's words are spaced, .BR's are joined; mdoc's .Nm names and .Nd description are read."""
    man = read_gzipped(tmp_path, ".SH NAME\n.B ls\n\\- list\n.BR dir ectory\ncontents\n.SH X\n")
    assert man_roff.parse_name_section(man) == man_roff.NameLine(("ls",), "list directory contents")
    mdoc = read_gzipped(
        tmp_path,
        ".Dd $Mdocdate$\n.Dt SSH 1\n.Os\n.Sh NAME\n.Nm ssh ,\n.Nm slogin\n"
        ".Nd OpenSSH remote login client\n.Sh SYNOPSIS\n.Nm ssh\n",
        "ssh.1.gz",
    )
    assert man_roff.parse_name_section(mdoc) == man_roff.NameLine(
        ("ssh", "slogin"), "OpenSSH remote login client"
    )


def test_only_the_first_entry_and_no_macro_definitions(tmp_path: Path) -> None:
    """A NAME section listing several "name \\- text" entries gives the first; definitions and
    registers after the line (rst2man's) are not text."""
    hostname = read_gzipped(
        tmp_path,
        ".SH NAME\nhostname \\- show or set the host name\n.br\n"
        "domainname \\- show or set the NIS domain name\n.SH SYNOPSIS\n",
    )
    assert man_roff.parse_name_section(hostname).description == "show or set the host name"
    ctags = read_gzipped(
        tmp_path,
        ".SH NAME\nctags \\- Generate tag files\n.\n.nr rst2man-indent-level 0\n"
        ".de1 rstReportMargin\n\\\\$1 \\\\n[an-margin]\nlevel margin\n..\n.SH SYNOPSIS\n",
    )
    assert man_roff.parse_name_section(ctags) == man_roff.NameLine(("ctags",), "Generate tag files")
    before = read_gzipped(
        tmp_path, ".SH NAME\n.de XX\ndefined text\n..\n.nh\nfoo \\- does foo\n.SH B\n"
    )
    assert man_roff.parse_name_section(before) == man_roff.NameLine(("foo",), "does foo")


def test_so_redirects(tmp_path: Path) -> None:
    """A page that is only ".so man2/open.2" (after comments) is a redirect; a page that uses
    .so further down, or has text first, is not."""
    assert man_roff.is_redirect(read_gzipped(tmp_path, '.\\" comment\n\n.so man2/open.2\n'))
    assert man_roff.is_redirect(read_gzipped(tmp_path, ".so man3/printf.3\n"))
    page = ".TH X 1\n.SH NAME\nx \\- y\n.so other\n"
    assert not man_roff.is_redirect(read_gzipped(tmp_path, page))


def test_pages_without_a_name_line(tmp_path: Path) -> None:
    """No NAME section, a NAME with no dash, or nothing after the dash: None."""
    no_section = read_gzipped(tmp_path, ".TH X 1\n.SH SYNOPSIS\nx \\- y\n")
    assert man_roff.parse_name_section(no_section) is None
    no_dash = read_gzipped(tmp_path, ".SH NAME\nx: does y\n.SH SYNOPSIS\n")
    assert man_roff.parse_name_section(no_dash) is None
    empty = read_gzipped(tmp_path, ".SH NAME\nx \\-\n.SH SYNOPSIS\n")
    assert man_roff.parse_name_section(empty) is None


def test_plain_and_non_utf8_pages(tmp_path: Path) -> None:
    """A page not gzip'd is read as is; bytes that are not UTF-8 are replaced, not fatal."""
    plain = tmp_path / "plain.5"
    plain.write_bytes(b".SH NAME\npasswd \\- the password file\n")
    assert man_roff.parse_name_section(man_roff.read_page(plain)).description == (
        "the password file"
    )
    latin1 = read_gzipped(tmp_path, ".SH NAME\nx \\- caf\xe9 menu\n".encode("latin-1"))
    assert man_roff.parse_name_section(latin1).description == "caf\ufffd menu"
