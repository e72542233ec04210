# A deterministic allocation-heavy Perl workload; prints one digest per phase.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $scale = shift // 1;

sub digest { return substr(md5_hex(join "\x1f", @_), 0, 16) }

sub hashes {
    my %h;
    for my $i (1 .. 200_000 * $scale) {
        my $k = "key-" . ($i % 40_000) . "-" . ($i % 9);
        push @{ $h{$k} }, $i;
        $h{"s$k"} .= chr(65 + $i % 26);
    }
    delete $h{"key-$_-3"} for 1 .. 5_000;
    my @keys = sort keys %h;
    return digest(scalar(@keys), @keys[0 .. 9], map { ref $h{$_} ? scalar @{ $h{$_} } : $h{$_} } @keys[-20 .. -1]);
}

sub strings {
    my $text = join "\n", map { sprintf "%06d %s %x %.3f", $_, "w" x ($_ % 50), $_ * 7, $_ / 7 } 1 .. 100_000 * $scale;
    my @words = $text =~ /\b(w{10,20})\b/g;
    (my $copy = $text) =~ s/(\d+) (w+)/$2:$1/g;
    my @lines = sort { length($a) <=> length($b) or $a cmp $b } split /\n/, $copy;
    my $joined = join ",", reverse @lines[0 .. 999];
    return digest(length($text), scalar(@words), length($copy), substr($joined, 0, 500));
}

sub structures {
    my @tree;
    for my $i (1 .. 50_000 * $scale) {
        push @tree, { id => $i, kids => [ map { [ $_, "n$_" ] } 1 .. ($i % 7) ], name => "node$i" };
    }
    my $sum = 0;
    for my $n (@tree) { $sum += $_->[0] for @{ $n->{kids} } }
    my @closures = map { my $x = $_; sub { $x * $_[0] } } 1 .. 10_000;
    my $acc = 0;
    $acc += $_->(3) for @closures;
    splice @tree, 100, 20_000;
    return digest($sum, $acc, scalar(@tree), $tree[-1]{name});
}

sub processes {
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        my %h = map { $_ => "v$_" } 1 .. 100_000;
        exit(keys(%h) == 100_000 ? 0 : 1);
    }
    waitpid($pid, 0);
    my $child = $? >> 8;
    my $out = `$^X -e 'print join(",", map { \$_ * \$_ } 1 .. 1000)'`;
    return digest($child, length($out), substr($out, -20));
}

for my $phase (qw(hashes strings structures processes)) {
    no strict 'refs';
    print "$phase ", &$phase(), "\n";
}
print "done\n";
