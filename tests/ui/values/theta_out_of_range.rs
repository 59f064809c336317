use densenet::densenet;

densenet! {
    pub Net<growth: 32, blocks: [6, 12, 24, 16], theta: 1.5>;
    pub Zero<growth: 32, blocks: [6, 12, 24, 16], theta: 0>
}

fn main() {}
