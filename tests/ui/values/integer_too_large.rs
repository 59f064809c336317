use densenet::densenet;

densenet! {
    pub Net<growth: 100000, blocks: [6, 12, 24, 16]>;
    pub Huge<growth: 32, blocks: [6, 12, 24, 1000000000000000000000000000000000000000000]>
}

fn main() {}
