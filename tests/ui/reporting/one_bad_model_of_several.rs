// Models declared together are checked separately: the good ones still compile.
use densenet::densenet;

densenet! {
    pub Good<growth: 4, blocks: [1, 1], stem: cifar, input: [3, 8, 8]>;
    pub Bad<growth: 4, blocks: [1, 1], stem: cifar, classes: 0>
}

fn main() {
    assert_eq!(Good::INPUT, [3, 8, 8]);
    let _ = Bad;
}
