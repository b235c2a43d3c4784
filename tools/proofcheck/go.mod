module llmnet/tools/proofcheck

go 1.22.11

require github.com/cometbft/cometbft v0.38.26

require (
	github.com/cosmos/gogoproto v1.7.0 // indirect
	github.com/google/go-cmp v0.6.0 // indirect
	google.golang.org/protobuf v1.36.5 // indirect
)
