use densenet::densenet;

densenet! {
    pub Net<growth: 12, depth: 101, theta: 0.5, stem: cifar>
}

fn main() {}
