use densenet::densenet;

densenet! {
    pub Net<growth: 12, blocks: [16, 16, 16], depth: 100, stem: cifar>
}

fn main() {}
